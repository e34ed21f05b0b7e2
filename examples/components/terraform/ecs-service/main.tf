variable "service" { type = string }
variable "taskdef_arn" { type = string }
variable "replicas" { type = number }
variable "min_healthy_percent" { type = number }

resource "terraform_data" "service" {
  input = { name = var.service, taskdef = var.taskdef_arn, desired_count = var.replicas }
}

output "service_url" {
  value = "https://${var.service}.example.com"
}
