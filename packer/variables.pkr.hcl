variable "region" {
  type        = string
  default     = "us-east-1"
  description = "AWS region the AMI is built in (copy it elsewhere with ami_regions)."
}

variable "ami_regions" {
  type        = list(string)
  default     = []
  description = "Other regions to copy the finished AMI to."
}

variable "instance_type" {
  type        = string
  default     = "t3.medium"
  description = "Instance type of the temporary build instance."
}

variable "base" {
  type        = string
  default     = "debian-12"
  description = "Base image: debian-12 (Debian's official AMI, the one the tests provision), ubuntu-22.04 or ubuntu-24.04."

  validation {
    condition     = contains(["debian-12", "ubuntu-22.04", "ubuntu-24.04"], var.base)
    error_message = "The base must be debian-12, ubuntu-22.04 or ubuntu-24.04."
  }
}

variable "architecture" {
  type        = string
  default     = "amd64"
  description = "CPU architecture: amd64 or arm64 (Graviton). The uploaded binaries must match it."

  validation {
    condition     = contains(["amd64", "arm64"], var.architecture)
    error_message = "The architecture must be amd64 or arm64."
  }
}

variable "source_ami" {
  type        = string
  default     = ""
  description = "A specific base AMI id; empty picks the newest official image of var.base."
}

variable "ami_name" {
  type        = string
  default     = ""
  description = "Name of the AMI; empty makes chainwarden-node-<base>-<arch>-<timestamp>."
}

variable "root_volume_size_gib" {
  type        = number
  default     = 16
  description = "Root disk size. Chain data lives on the EBS volumes the agent ensures, never on the root disk."
}

variable "encrypt_root" {
  type        = bool
  default     = true
  description = "Encrypt the root disk and the AMI's snapshot (with kms_key_id, or the account's default EBS key)."
}

variable "kms_key_id" {
  type        = string
  default     = ""
  description = "KMS key for the root disk; empty uses the account's default EBS key."
}

variable "subnet_id" {
  type        = string
  default     = ""
  description = "Subnet of the build instance; empty uses the default VPC."
}

variable "consul_version" {
  type        = string
  default     = "1.19.2"
  description = "Consul from HashiCorp's apt repository (unless a prebuilt consul is in prebuilt_binaries)."
}

variable "nomad_version" {
  type        = string
  default     = "1.10.5"
  description = "Nomad from HashiCorp's apt repository (unless a prebuilt nomad is in prebuilt_binaries)."
}

variable "consul_template_version" {
  type        = string
  default     = "0.41.1"
  description = "consul-template from HashiCorp's apt repository (unless a prebuilt one is in prebuilt_binaries)."
}

variable "docker_source" {
  type        = string
  default     = "docker"
  description = "docker: Docker's apt repository (docker-ce); distro: the distribution's docker.io."

  validation {
    condition     = contains(["docker", "distro"], var.docker_source)
    error_message = "The docker_source must be docker or distro."
  }
}

variable "docker_version" {
  type        = string
  default     = "27.3.1"
  description = "docker-ce version from Docker's repository; empty takes the newest."
}

variable "chainwarden_binary" {
  type        = string
  default     = ""
  description = "The chainwarden binary to ship, a file named chainwarden; empty uses bin/chainwarden of this repository (make build)."

  validation {
    condition     = var.chainwarden_binary == "" || basename(var.chainwarden_binary) == "chainwarden"
    error_message = "The chainwarden_binary must be a file named chainwarden."
  }
}

variable "chainwarden_version" {
  type        = string
  default     = ""
  description = "The version the chainwarden binary must report (chainwarden version); empty skips the check."
}

variable "prebuilt_binaries" {
  type        = list(string)
  default     = []
  description = "Prebuilt consul, nomad or consul-template binaries (files named so) to install instead of the packages."

  validation {
    condition     = length([for p in var.prebuilt_binaries : p if !contains(["consul", "nomad", "consul-template"], basename(p))]) == 0
    error_message = "Each prebuilt binary must be a file named consul, nomad or consul-template."
  }
}

variable "tags" {
  type        = map(string)
  default     = {}
  description = "Extra tags on the AMI and its snapshot."
}
