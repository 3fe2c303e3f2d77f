# The chainwarden node AMI: Debian 12 (or Ubuntu LTS) with Docker, Consul, Nomad, consul-template, nginx, HAProxy,
# the chainwarden binary and their systemd units. `packer build packer/` (after `make build`); see docs/PACKER.md.

locals {
  timestamp = formatdate("YYYYMMDDhhmmss", timestamp())

  # The official images: Debian's (account 136693071363) and Canonical's (099720109477).
  bases = {
    "debian-12" = {
      owner        = "136693071363"
      name         = "debian-12-${var.architecture}-*"
      ssh_username = "admin"
      root_device  = "/dev/xvda"
    }
    "ubuntu-22.04" = {
      owner        = "099720109477"
      name         = "ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-${var.architecture}-server-*"
      ssh_username = "ubuntu"
      root_device  = "/dev/sda1"
    }
    "ubuntu-24.04" = {
      owner        = "099720109477"
      name         = "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-${var.architecture}-server-*"
      ssh_username = "ubuntu"
      root_device  = "/dev/sda1"
    }
  }
  base = local.bases[var.base]

  ami_name            = var.ami_name != "" ? var.ami_name : "chainwarden-node-${var.base}-${var.architecture}-${local.timestamp}"
  chainwarden_binary  = var.chainwarden_binary != "" ? var.chainwarden_binary : "${path.root}/../bin/chainwarden"
  chainwarden_version = var.chainwarden_version != "" ? var.chainwarden_version : "unversioned"

  # Where the file provisioners put what the scripts install from.
  upload = "/tmp/chainwarden-upload"

  tags = merge(var.tags, {
    Name                    = local.ami_name
    chainwarden_version     = local.chainwarden_version
    consul_version          = var.consul_version
    nomad_version           = var.nomad_version
    consul_template_version = var.consul_template_version
    docker                  = var.docker_source == "docker" ? "docker-ce ${var.docker_version}" : "distribution docker.io"
    base                    = var.base
    base_ami                = "{{ .SourceAMI }}"
    base_ami_name           = "{{ .SourceAMIName }}"
    built_by                = "packer"
  })
}

source "amazon-ebs" "node" {
  region        = var.region
  ami_regions   = var.ami_regions
  instance_type = var.instance_type
  subnet_id     = var.subnet_id
  ssh_username  = local.base.ssh_username

  source_ami = var.source_ami
  dynamic "source_ami_filter" {
    for_each = var.source_ami == "" ? [local.base] : []
    content {
      owners      = [source_ami_filter.value.owner]
      most_recent = true
      filters = {
        name                = source_ami_filter.value.name
        architecture        = var.architecture == "amd64" ? "x86_64" : "arm64"
        virtualization-type = "hvm"
        root-device-type    = "ebs"
      }
    }
  }

  ami_name        = local.ami_name
  ami_description = "chainwarden node: ${var.base}, Consul ${var.consul_version}, Nomad ${var.nomad_version}, chainwarden ${local.chainwarden_version}"

  # Instances launched from this AMI answer only IMDSv2 (session tokens); so does the build instance.
  imds_support = "v2.0"
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  # A root disk only: chain data lives on the EBS volumes `chainwarden volume ensure` attaches at boot.
  launch_block_device_mappings {
    device_name           = local.base.root_device
    volume_size           = var.root_volume_size_gib
    volume_type           = "gp3"
    delete_on_termination = true
    encrypted             = var.encrypt_root
    kms_key_id            = var.kms_key_id
  }

  tags          = local.tags
  snapshot_tags = local.tags
  run_tags = {
    Name = "packer-build ${local.ami_name}"
  }
}

build {
  name    = "chainwarden-node"
  sources = ["source.amazon-ebs.node"]

  provisioner "shell" {
    inline = ["mkdir -p ${local.upload}/bin"]
  }

  provisioner "file" {
    source      = "${path.root}/scripts"
    destination = local.upload
  }

  provisioner "file" {
    source      = "${path.root}/files"
    destination = local.upload
  }

  # The RPC proxy's consul-template configs and templates.
  provisioner "file" {
    source      = "${path.root}/../consul-templates"
    destination = local.upload
  }

  # The binaries from the build machine: chainwarden always, consul/nomad/consul-template when given.
  provisioner "file" {
    sources     = concat([local.chainwarden_binary], var.prebuilt_binaries)
    destination = "${local.upload}/bin/"
  }

  provisioner "shell" {
    environment_vars = [
      "UPLOAD_DIR=${local.upload}",
      "CONSUL_VERSION=${var.consul_version}",
      "NOMAD_VERSION=${var.nomad_version}",
      "CONSUL_TEMPLATE_VERSION=${var.consul_template_version}",
      "DOCKER_SOURCE=${var.docker_source}",
      "DOCKER_VERSION=${var.docker_version}",
      "CHAINWARDEN_VERSION=${var.chainwarden_version}",
    ]
    execute_command = "chmod +x {{ .Path }}; sudo env {{ .Vars }} {{ .Path }}"
    inline          = ["bash ${local.upload}/scripts/provision.sh"]
  }
}
