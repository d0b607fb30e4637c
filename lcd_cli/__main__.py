from lcd_cli.cli import app

app(prog_name="lcd")
