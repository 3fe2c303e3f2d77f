# The plugins this template needs, for `packer init packer/` with Packer 1.10 and later (which bundle no plugins).
#
# This block lives alone in its own file on purpose: Packer 1.9.4 (the last release with the amazon builder
# bundled, the one the tests build offline) demands a plugin named in required_plugins even though it has the
# builder built in. The tests run `packer validate -syntax-only` on the whole directory and a full
# `packer validate` on the directory without this file. See docs/PACKER.md.
packer {
  required_version = ">= 1.9.4"

  required_plugins {
    amazon = {
      source  = "github.com/hashicorp/amazon"
      version = ">= 1.2.9"
    }
  }
}
