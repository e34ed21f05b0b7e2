variable "service" { type = string }
variable "target" { type = string }
variable "taskdef_arn" { type = string }
variable "replicas" { type = number }
variable "min_healthy_percent" { type = number }

module "label" {
  source  = "../modules/label"
  service = var.service
  target  = var.target
}

resource "terraform_data" "service" {
  input = {
    name          = module.label.name
    taskdef       = var.taskdef_arn
    desired_count = var.replicas
    min_healthy   = var.min_healthy_percent
  }

  lifecycle {
    precondition {
      condition     = var.min_healthy_percent >= 0 && var.min_healthy_percent <= 100
      error_message = "min_healthy_percent must be between 0 and 100."
    }
  }
}

output "service_url" {
  value = "https://${module.label.name}.example.com"
}
