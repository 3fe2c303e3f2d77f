consul {}

restart {
  after = "5m"
}
