package ebs_test

import (
	"fmt"
	"os"
	"os/exec"
	"testing"
)

// TestMain puts every test's temporary directory, where the tests mount their loop devices, under a shared bind
// mount when the tests run as root. The machine's "/" is a private mount, so every mount namespace created while a
// filesystem is mounted here (`ip netns exec` in the fleet and probe tests running alongside) would keep its own
// copy of the mount: an unmount here would then leave the filesystem alive, its log not written back and its primary
// superblock stale, and the read-only fsck after it fails (xfs_repair -n: "would write modified primary
// superblock"). Under a shared mount those copies are slaves of this one and go away with its unmount.
func TestMain(m *testing.M) {
	os.Exit(runUnderSharedMount(m))
}

func runUnderSharedMount(m *testing.M) int {
	if os.Geteuid() != 0 {
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "chainwarden-ebs-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	if out, err := exec.Command("mount", "--bind", dir, dir).CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "bind mount %s: %v: %s\n", dir, err, out)
		return 1
	}
	defer func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "umount %s: %v: %s\n", dir, err, out)
			_ = exec.Command("umount", "-l", dir).Run()
		}
	}()
	if out, err := exec.Command("mount", "--make-shared", dir).CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "make %s a shared mount: %v: %s\n", dir, err, out)
		return 1
	}
	if err := os.Setenv("TMPDIR", dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}
