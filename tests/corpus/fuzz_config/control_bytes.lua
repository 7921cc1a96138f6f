listen = "\n"
