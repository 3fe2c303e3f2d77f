consul {}

volume "v" {
  chain      = "ethereum"
  network    = "mainnet"
  client     = "geth"
  kms_key_id = "alias/x"
  encrypted  = false
  size_gib   = 70000
  type       = "io2"
  mount_path = "data"
  filesystem = "btrfs"
}
