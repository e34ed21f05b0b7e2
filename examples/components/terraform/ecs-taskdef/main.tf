variable "service" { type = string }
variable "image" { type = string }
variable "repository_url" { type = string }
variable "cpu" { type = number }

resource "terraform_data" "taskdef" {
  input = { family = var.service, image = "${var.repository_url}:${split(":", var.image)[1]}", cpu = var.cpu }
}

output "taskdef_arn" {
  value = "arn:aws:ecs:task-definition/${var.service}:${substr(sha256(jsonencode(terraform_data.taskdef.input)), 0, 8)}"
}
