consul {}

volume "v" {
  chain   = "ethereum"
  network = "main/net"
  client  = "geth"
}

volume "w" {
  chain   = ""
  network = "mainnet"
  client  = "geth client"
}
