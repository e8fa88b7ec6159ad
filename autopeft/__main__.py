from autopeft.cli import app

app(prog_name="autopeft")
