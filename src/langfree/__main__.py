from langfree.cli import app

app()
