from uwav.cli import main

main()
