consul {}

volume "v" {
  chain             = "ethereum"
  network           = "mainnet"
  client            = "geth"
  snapshot_interval = "6h"
}

volume "w" {
  chain             = "ethereum"
  network           = "mainnet"
  client            = "geth"
  node              = "geth-w"
  snapshot_interval = "10m"
  drain_wait        = "soon"
}
