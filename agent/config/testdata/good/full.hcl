consul {
  address          = "127.0.0.1:8500"
  kv_prefix        = "chainwarden"
  deregister_after = "5m"
}
listen       = "127.0.0.1:9464"
interval     = "1s"
push_poll_interval = "15s"
head_max_age = "30s"
log_level    = "debug"

node "geth-a" {
  kind     = "ethereum"
  rpc      = "http://127.0.0.1:8545"
  ws       = "ws://127.0.0.1:8546"
  service  = "eth-devnet"
  chain_id = 4242
  warn_lag = 2
  max_lag  = 10
  warn_behind = "30s"
  max_behind  = "2m"
  max_finalized_behind = "5m"
}

node "arb-a" {
  kind           = "ethereum"
  rpc            = "http://127.0.0.1:8547"
  service        = "arb-one"
  chain_id       = 42161
  warn_behind    = "10s"
  max_behind     = "1m"
  min_block_time = "100ms"
  max_finalized_behind = "0s"
}

node "irita-val0" {
  kind    = "cometbft"
  rpc     = "http://10.0.1.5:26657"
  ws      = "ws://10.0.1.5:26657/websocket"
  service = "irita-testnet"
  network = "irita-test"
  max_block_age = "30s"
  min_peers = 3
}

node "chainlink-a" {
  kind        = "chainlink"
  rpc         = "http://127.0.0.1:6688"
  service     = "chainlink-sepolia"
  role        = "active"
  api_key     = env("CW_TEST_CL_KEY")
  api_secret  = env("CW_TEST_CL_SECRET")
  min_balance = "0.25"
}

reference "infura" {
  service = "eth-devnet"
  rpc     = env("CW_TEST_INFURA_URL")
}

volume "geth-data" {
  chain    = "ethereum"
  network  = "mainnet"
  client   = "geth"
  size_gib = 2000

  grow {
    threshold      = 80
    step_gib       = 250
    max_size_gib   = 4000
    check_interval = "2m"
  }
}
