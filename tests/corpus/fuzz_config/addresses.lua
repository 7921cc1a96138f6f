listen = { "[::1]:0", "0.0.0.0:65535", "localhost:80", "unix:relative.sock",
  "127.0.0.1:65536", "[::1:7000", "host:port", ":7000", "unix:" }
