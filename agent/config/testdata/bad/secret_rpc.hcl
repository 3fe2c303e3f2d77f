consul {}
node "geth" {
  kind     = "ethereum"
  rpc      = "wss://user:hunter2@example.invalid/v3/KEY"
  service  = "eth-mainnet"
  chain_id = 1
}
