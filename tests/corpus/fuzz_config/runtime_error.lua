local t = nil
listen = t.address
error("bad config", 0)
