# A tiny service for checking the fleet end to end without Docker: a shell
# loop under raw_exec that prints the time and a message every 5 seconds.
# Deployments settle in seconds (min_healthy_time 2s), and a failing
# version rolls back by itself (auto_revert), so both paths are quick to
# exercise:
#
#   edgectl job run heartbeat --var message=hello
#   edgectl job run heartbeat --var 'script=exit 1'   # fails, rolls back

variable "message" {
  type        = string
  default     = "alive"
  description = "What each beat prints after the time"
}

variable "count" {
  type        = number
  default     = 1
  description = "How many copies run"
}

variable "script" {
  type        = string
  default     = "while true; do echo \"$(date -u +%FT%TZ) $MESSAGE\"; sleep 5; done"
  description = "The shell command the task runs (a failing one makes a failed deployment)"
}

job "heartbeat" {
  datacenters = ["*"]
  type        = "service"

  update {
    max_parallel      = 1
    health_check      = "task_states"
    min_healthy_time  = "2s"
    healthy_deadline  = "20s"
    progress_deadline = "30s"
    auto_revert       = true
  }

  group "heartbeat" {
    count = var.count

    restart {
      attempts = 0
      mode     = "fail"
    }

    reschedule {
      attempts  = 0
      unlimited = false
    }

    task "beat" {
      driver = "raw_exec"

      config {
        command = "/bin/sh"
        args    = ["-c", var.script]
      }

      env {
        MESSAGE = var.message
      }

      resources {
        cpu    = 20
        memory = 32
      }
    }
  }
}
