package ebs

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/smithy-go"
)

func TestAWSErrorCodesMapToSentinels(t *testing.T) {
	cases := []struct {
		code, msg string
		want      error
	}{
		{"RequestLimitExceeded", "Request limit exceeded.", ErrThrottled},
		{"Throttling", "Rate exceeded", ErrThrottled},
		{"EC2ThrottledException", "", ErrThrottled},
		{"BandwidthLimitExceeded", "", ErrThrottled},
		{"SnapshotCreationPerVolumeRateExceeded", "The maximum per volume CreateSnapshot request rate has been exceeded.", ErrThrottled},
		{"VolumeLimitExceeded", "You have exceeded your maximum gp3 storage limit of 50 TiB in this region.", ErrLimit},
		{"SnapshotLimitExceeded", "The maximum number of snapshots has been reached.", ErrLimit},
		{"MaxIOPSLimitExceeded", "You have exceeded your maximum io2 IOPS limit.", ErrLimit},
		{"AttachmentLimitExceeded", "Too many volumes attached to this instance.", ErrLimit},
		{"ResourceLimitExceeded", "", ErrLimit},
		{"TagLimitExceeded", "", ErrLimit},
		{"ServiceQuotaExceeded", "", ErrLimit},
		{"InvalidVolume.NotFound", "The volume 'vol-1' does not exist.", ErrNotFound},
		{"InvalidSnapshot.NotFound", "", ErrNotFound},
		{"InvalidInstanceID.NotFound", "", ErrNotFound},
		{"InvalidZone.NotFound", "", ErrNotFound},
		{"VolumeInUse", "vol-1 is already attached to an instance", ErrInUse},
		{"InvalidSnapshot.InUse", "The snapshot snap-1 is currently in use by ami-1", ErrInUse},
		{"DependencyViolation", "", ErrInUse},
		{"IncorrectState", "vol-1 is creating", ErrIncorrectState},
		{"IncorrectInstanceState", "", ErrIncorrectState},
		{"UnauthorizedOperation", "You are not authorized to perform this operation.", ErrDenied},
		{"AuthFailure", "", ErrDenied},
		{"OptInRequired", "", ErrDenied},
		{"InvalidClientTokenId", "", ErrDenied},
		{"MissingAuthenticationToken", "", ErrDenied},
		{"RequestExpired", "", ErrDenied},
		{"IdempotentParameterMismatch", "", ErrTokenMismatch},
		{"InternalError", "An internal error has occurred", ErrAWSUnavailable},
		{"ServiceUnavailable", "", ErrAWSUnavailable},
		{"InsufficientVolumeCapacity", "There is not enough capacity to fulfill your EBS volume provision request.", ErrAWSUnavailable},
		{"InvalidParameterValue", "Invalid value '/dev/sdf' for unixDevice. Attachment point /dev/sdf is already in use", ErrDeviceInUse},
		{"InvalidParameterValue", "Volume size 0 is not valid", ErrInvalid},
		{"InvalidParameterCombination", "", ErrInvalid},
		{"InvalidParameterDependency", "", ErrInvalid},
		{"InvalidVolume.ZoneMismatch", "", ErrInvalid},
		{"MissingParameter", "", ErrInvalid},
		{"UnknownParameter", "", ErrInvalid},
		{"UnsupportedOperation", "", ErrInvalid},
		{"SomethingNew", "a code nobody has seen", ErrAWS},
		{"", "", ErrAWS},
	}
	all := []error{ErrNotFound, ErrThrottled, ErrLimit, ErrInUse, ErrIncorrectState, ErrDenied, ErrInvalid,
		ErrTokenMismatch, ErrDeviceInUse, ErrAWSUnavailable, ErrAWS}
	for _, tc := range cases {
		t.Run(tc.code, func(t *testing.T) {
			api := &smithy.GenericAPIError{Code: tc.code, Message: tc.msg}
			err := awsErr("CreateVolume", fmt.Errorf("operation error EC2: CreateVolume: %w", api))
			for _, s := range all {
				if errors.Is(err, s) != (s == tc.want) {
					t.Fatalf("%v: errors.Is(%q) = %v, want only %q", err, s, errors.Is(err, s), tc.want)
				}
			}
			var got smithy.APIError
			if !errors.As(err, &got) || got.ErrorCode() != tc.code {
				t.Fatalf("%v: the SDK error is not kept", err)
			}
			if want := fmt.Sprintf("ec2 CreateVolume: %s (%s: %s)", tc.want, tc.code, tc.msg); !strings.HasPrefix(err.Error(), want) {
				t.Fatalf("error %q, want it to start with %q", err, want)
			}
		})
	}
}

func TestAWSErrorAfterRetries(t *testing.T) {
	api := &smithy.GenericAPIError{Code: "RequestLimitExceeded", Message: "Request limit exceeded."}
	err := awsErr("DescribeSnapshots", &retry.MaxAttemptsError{Attempt: 8, Err: api})
	if !errors.Is(err, ErrThrottled) || !strings.HasPrefix(err.Error(),
		"ec2 DescribeSnapshots after 8 attempts: throttled by AWS (RequestLimitExceeded: Request limit exceeded.)") {
		t.Fatalf("%v", err)
	}
	plain := errors.New("dial tcp: connection refused")
	if err := awsErr("DescribeVolumes", plain); !errors.Is(err, plain) || err.Error() != "ec2 DescribeVolumes: dial tcp: connection refused" {
		t.Fatalf("not an API error: %v", err)
	}
	if awsErr("DescribeVolumes", nil) != nil {
		t.Fatal("nil error mapped to an error")
	}
}
