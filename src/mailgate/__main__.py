from mailgate.cli import main

main()
