listen = { { address = 7000 } }
backlog = "many"
packet = 3
log_level = "loud"
