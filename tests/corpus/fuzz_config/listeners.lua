listen = {
  "127.0.0.1:7000",
  { address = "127.0.0.1:7001", handler = "upper.lua", backlog = 64 },
  { address = "unix:/tmp/luaecho.sock", packet = "line", packet_size = 4096 },
  { address = "*:0", recv_timeout = 2.5, idle_timeout = false },
}
backlog = 128
