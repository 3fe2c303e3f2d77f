consul {
  head_publishers = 1
}
