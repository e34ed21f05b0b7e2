variable "name" { type = string }
variable "region" { type = string }

resource "terraform_data" "repository" {
  input = { name = var.name, region = var.region }
}

output "repository_url" {
  value = "123456789012.dkr.ecr.${var.region}.amazonaws.com/${var.name}"
}
