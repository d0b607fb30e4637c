from lcd_cli.cli import run

run()
