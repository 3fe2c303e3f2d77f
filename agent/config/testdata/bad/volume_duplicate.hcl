consul {}

volume "v" {
  chain   = "ethereum"
  network = "mainnet"
  client  = "geth"
}

volume "v" {
  chain   = "ethereum"
  network = "sepolia"
  client  = "geth"
}
