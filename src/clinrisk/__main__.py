from clinrisk.cli.app import main

main()
