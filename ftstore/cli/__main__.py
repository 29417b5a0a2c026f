from ftstore.cli.main import console

console()
