variable "service" { type = string }
variable "target" { type = string }
variable "region" { type = string }

module "label" {
  source  = "../modules/label"
  service = var.service
  target  = var.target
}

resource "terraform_data" "repository" {
  input = { name = module.label.name, region = var.region, tags = module.label.tags }
}

output "repository_url" {
  value = "123456789012.dkr.ecr.${var.region}.amazonaws.com/${module.label.name}"
}

# Sensitive: masked wherever atmosbuild shows it, never logged.
output "push_token" {
  value     = "token-${substr(sha256(terraform_data.repository.id), 0, 16)}"
  sensitive = true
}
