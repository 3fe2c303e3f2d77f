consul {}
node "cl" {
  kind        = "chainlink"
  rpc         = "http://127.0.0.1:6688"
  service     = "chainlink-sepolia"
  min_balance = "0.1"
}
