consul {}

volume "v" {
  chain   = "ethereum"
  network = "mainnet"
  client  = "geth"
  type    = "gp2"
  iops    = 3000
}
