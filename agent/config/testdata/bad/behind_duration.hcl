consul {}
node "geth" {
  kind           = "ethereum"
  rpc            = "http://127.0.0.1:8545"
  service        = "eth-mainnet"
  chain_id       = 1
  max_behind     = "0s"
  min_block_time = "fast"
  max_finalized_behind = "-1m"
}
node "comet" {
  kind    = "cometbft"
  rpc     = "http://127.0.0.1:26657"
  service = "irita"
  network = "irita-hub"
  max_finalized_behind = "1m"
}
node "cl" {
  kind        = "chainlink"
  rpc         = "http://127.0.0.1:6688"
  service     = "cl"
  warn_behind = "1m"
}
