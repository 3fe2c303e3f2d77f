consul {}
reference "infura" {
  service = "eth-mainnet"
  rpc     = env("CW_TEST_SURELY_UNSET")
}
