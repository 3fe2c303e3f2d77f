consul {}

volume "v" {
  chain   = "ethereum"
  network = "mainnet"
  client  = "geth"
  freeze  = "command"
}
