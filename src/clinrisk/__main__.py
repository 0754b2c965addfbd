from clinrisk.cli import main

main()
