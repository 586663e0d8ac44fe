from hub.cli import main

if __name__ == "__main__":  # not when a spawned child process (hub.processor) imports the parent's main module
    main()
