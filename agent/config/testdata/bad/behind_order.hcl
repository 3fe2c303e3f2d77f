consul {}
node "geth" {
  kind        = "ethereum"
  rpc         = "http://127.0.0.1:8545"
  service     = "eth-mainnet"
  chain_id    = 1
  warn_behind = "5m"
  max_behind  = "1m"
}
