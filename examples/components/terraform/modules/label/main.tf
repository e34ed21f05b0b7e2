# A shared local module: every component that calls it (`source =
# "../modules/label"`) has its files in its key, so an edit here re-applies
# exactly those components.
variable "service" { type = string }
variable "target" { type = string }

locals {
  name = "${var.service}-${var.target}"
}

output "name" { value = local.name }
output "tags" { value = { service = var.service, target = var.target } }
