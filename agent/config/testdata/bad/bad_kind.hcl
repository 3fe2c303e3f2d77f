consul {}
node "geth" {
  kind     = "ethereal"
  rpc      = "http://127.0.0.1:8545"
  service  = "eth-mainnet"
  chain_id = 1
}
