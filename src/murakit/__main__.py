from murakit.cli import app

app(prog_name="murakit")
