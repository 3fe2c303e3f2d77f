consul {}
node "cl" {
  kind                 = "chainlink"
  rpc                  = "http://127.0.0.1:6688"
  service              = "chainlink-sepolia"
  api_credentials_file = "/chainlink/.api"
  auth_checks_interval = "every minute"
}
