from facsynth.cli import main

main()
