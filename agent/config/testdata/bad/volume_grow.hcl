consul {}

volume "v" {
  chain    = "ethereum"
  network  = "mainnet"
  client   = "geth"
  size_gib = 500

  grow {
    threshold      = 120
    max_size_gib   = 400
    check_interval = "soon"
  }
}

volume "w" {
  chain   = "ethereum"
  network = "sepolia"
  client  = "geth"

  grow {
    factor = 1.5
  }
}
