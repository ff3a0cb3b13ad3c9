from maskspine.cli.main import run

run()
