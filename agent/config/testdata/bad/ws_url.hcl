consul {}
interval           = "2s"
push_poll_interval = "1s"

node "geth-a" {
  kind     = "ethereum"
  rpc      = "http://127.0.0.1:8545"
  ws       = "http://127.0.0.1:8546/KEY"
  service  = "eth-mainnet"
  chain_id = 1
}

node "chainlink-a" {
  kind    = "chainlink"
  rpc     = "http://127.0.0.1:6688"
  ws      = "ws://127.0.0.1:8546"
  service = "chainlink"
}
