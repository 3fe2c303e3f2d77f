consul {}
nomad {}
interval = "2s"

restart {
  after        = "15s"
  max_per_hour = 0
  backoff      = "2h"
  hold         = "soon"
}
