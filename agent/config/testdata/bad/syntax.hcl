consul {
node "geth" {
