"""Family configs shipped as package data (``lcd_cli.configs``)."""
