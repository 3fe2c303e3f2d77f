consul {}
nomad {}

# Restart stalled Nomad-run nodes; everything but the block itself is optional.
restart {
  after        = "3m"
  max_per_hour = 2
  hold         = "20m"
}
