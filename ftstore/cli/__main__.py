from ftstore.cli.main import main

main()
