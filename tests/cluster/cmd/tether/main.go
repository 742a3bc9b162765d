// Command tether runs one test-cluster component as its child and ends it when the test
// process that started tether goes away, however that happens (a failed assertion, a panic,
// SIGKILL): tether reads its stdin, which only the test process holds open, and the kernel
// closes it when that process dies. Then it stops the child (SIGTERM, then SIGKILL after
// --grace) and, with --unmount-below, lazily unmounts whatever is still mounted below that
// directory, so no process, mount or socket outlives the tests. Without a command it only
// waits, then after --settle unmounts and, with --remove, deletes a directory: the janitor
// of the cluster's temporary directory.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sort"
	"strings"
	"syscall"
	"time"
)

func main() {
	grace := flag.Duration("grace", 5*time.Second, "time between SIGTERM and SIGKILL")
	unmountBelow := flag.String("unmount-below", "", "unmount everything below this directory after the child ends")
	settle := flag.Duration("settle", 0, "without a command: time to wait after release, for the other tethers")
	remove := flag.String("remove", "", "without a command: directory to delete at the end")
	flag.Parse()
	if flag.NArg() == 0 {
		_, _ = io.Copy(io.Discard, os.Stdin)
		time.Sleep(*settle)
		if *unmountBelow != "" {
			unmountAll(*unmountBelow)
		}
		if *remove != "" {
			_ = os.RemoveAll(*remove)
		}
		return
	}
	child := exec.Command(flag.Arg(0), flag.Args()[1:]...)
	child.Stdout = os.Stdout
	child.Stderr = os.Stderr
	// If tether itself is killed, the kernel kills the child too.
	child.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := child.Start(); err != nil {
		fmt.Fprintf(os.Stderr, "tether: %v\n", err)
		os.Exit(1)
	}
	exited := make(chan error, 1)
	go func() { exited <- child.Wait() }()
	released := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		close(released)
	}()
	code := 0
	select {
	case err := <-exited:
		code = exitCode(err)
	case <-released:
		_ = syscall.Kill(-child.Process.Pid, syscall.SIGTERM)
		select {
		case err := <-exited:
			code = exitCode(err)
		case <-time.After(*grace):
			_ = syscall.Kill(-child.Process.Pid, syscall.SIGKILL)
			<-exited
			code = 137
		}
	}
	if *unmountBelow != "" {
		unmountAll(*unmountBelow)
	}
	os.Exit(code)
}

func exitCode(err error) int {
	if exitErr, ok := err.(*exec.ExitError); ok {
		return exitErr.ExitCode()
	}
	if err != nil {
		return 1
	}
	return 0
}

// unmountAll detaches every mount at or below dir, deepest first.
func unmountAll(dir string) {
	file, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return
	}
	defer file.Close()
	var points []string
	scanner := bufio.NewScanner(file)
	for scanner.Scan() {
		fields := strings.Fields(scanner.Text())
		if len(fields) < 5 {
			continue
		}
		point := unescape(fields[4])
		if point == dir || strings.HasPrefix(point, strings.TrimSuffix(dir, "/")+"/") {
			points = append(points, point)
		}
	}
	sort.Slice(points, func(i, j int) bool { return len(points[i]) > len(points[j]) })
	for _, point := range points {
		_ = syscall.Unmount(point, syscall.MNT_DETACH)
	}
}

// unescape undoes mountinfo's octal escapes (`\040` for a space).
func unescape(field string) string {
	var out strings.Builder
	for i := 0; i < len(field); i++ {
		if field[i] == '\\' && i+3 < len(field) {
			var value int
			if _, err := fmt.Sscanf(field[i+1:i+4], "%3o", &value); err == nil {
				out.WriteByte(byte(value))
				i += 3
				continue
			}
		}
		out.WriteByte(field[i])
	}
	return out.String()
}
