from dyno.cli import main

main()
